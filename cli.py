"""Entry point: ``python cli.py fit --config demo_cls.yaml`` (see README.md)."""

from focalbench.cli import main

if __name__ == "__main__":
    main()
