"""Small helpers shared by the formula tests (importable as `helpers`: pytest puts this folder on sys.path)."""

import torch


def randomize_(module, scale=0.3):
    """Give every parameter of `module` a random value, so a formula test cannot pass on an init of 0 or 1."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module
