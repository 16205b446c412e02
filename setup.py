"""Packages for setuptools: ``focalbench*``, and the repository's ``configs/`` installed as ``focalbench/configs``
(users find the configs at the root of a checkout; an installed ``focalbench`` command finds them in the package).
Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["focalbench*"]) + ["focalbench.configs"],
    package_dir={"focalbench.configs": "configs"},
)
