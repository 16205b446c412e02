"""Our FocalNet weights in the timm or Hugging Face layout: the inverse of :func:`checkpoints.to_focalbench`.

No second key table: every key of the *target* model (a timm or transformers FocalNet built with the matching
configuration) is renamed forward with the readers' own rules, which gives the key of ours that fills it; the
1×1 kernels of ours become the target's ``Linear`` weights by a reshape. Keys left over on either side are an error
that names them, so a target built with the wrong configuration cannot be filled silently.
"""

from __future__ import annotations

import torch

from focalbench.models.checkpoints import CheckpointError, _rename_hf, _rename_timm

_RENAMES = {"timm": _rename_timm, "hf": _rename_hf}


def from_focalbench(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], layout: str
) -> dict[str, torch.Tensor]:
    """``state`` (our layout) as a state dict with the keys and shapes of ``target`` (``"timm"`` or ``"hf"``)."""
    rename = _RENAMES[layout]
    out, used = {}, set()
    for key, want in target.items():
        ours = rename(key)
        if ours not in state:
            continue
        value = state[ours]
        if value.numel() != want.numel():
            raise CheckpointError(f"{key}: ours ({ours}) has shape {tuple(value.shape)}, {layout} {tuple(want.shape)}")
        out[key] = value.detach().reshape(want.shape).contiguous()
        used.add(ours)
    missing = [k for k in target if k not in out]
    unused = [k for k in state if k not in used]
    if missing or unused:
        raise CheckpointError(
            f"the {layout} model does not match the weights: not filled {missing[:8]}, left over {unused[:8]}"
        )
    return out
