"""A Hugging Face hub cache laid out the way the hub lays it out, holding seeded random weights.

    $HF_HOME/hub/models--ORG--NAME/refs/main                      the 40-hex commit of 'main'
    $HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/FILES       what the repo holds at that commit

With ``HF_HOME`` pointing here and ``HF_HUB_OFFLINE=1``, ``open_clip`` and ``transformers`` resolve a hub id
to these files exactly as they resolve a real download, so the code a user runs (hub id -> cache ->
weights) runs in tests. The weights are random: nothing computed from them means anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: open_clip's hub repo for ViT-B-32 'openai' (open_clip.pretrained.get_pretrained_cfg('ViT-B-32', 'openai')).
VIT_B_32_OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"
#: Random initialisation makes GELU and QuickGELU nearly equal (cosine ~0.9999); multiplying every MLP's input
#: weights (c_fc) by this makes the activation matter (measured here: L2 1e-2 between the two builds against
#: 2e-4 of float16 rounding, on ViT-B-32).
MLP_INPUT_SCALE = 3.0


def snapshot_dir(hf_home: Path, repo: str) -> Path:
    """Create models--ORG--NAME with refs/main naming a commit; returns that commit's snapshot folder."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()  # any 40-hex name will do; this one is stable
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def save_random_open_clip(hf_home: Path, model: str, repo: str, seed: int = 0,
                          mlp_scale: float = MLP_INPUT_SCALE) -> Path:
    """Seeded random weights of open_clip ``model`` (its real architecture) as the repo's
    open_clip_model.safetensors; every ``mlp.c_fc.weight`` multiplied by ``mlp_scale``. Returns the file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None)
    state = {k: (v * mlp_scale if k.endswith("mlp.c_fc.weight") else v).detach().contiguous().clone()
             for k, v in net.state_dict().items()}
    path = snapshot_dir(hf_home, repo) / "open_clip_model.safetensors"
    save_file(state, str(path))
    return path


def save_transformers(hf_home: Path, repo: str, model, processor) -> Path:
    """``save_pretrained`` of a model and its processor as the snapshot of hub repo ``repo``; returns the folder."""
    snap = snapshot_dir(hf_home, repo)
    model.save_pretrained(snap)
    processor.save_pretrained(snap)
    return snap
