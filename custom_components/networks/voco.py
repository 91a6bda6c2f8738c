"""VoCo: volume-contrastive pre-training of the SwinUNETR(v2) encoder, and the loader of its checkpoints.

Paper: Wu, Zhuang, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for 3D Medical Image
Analysis", CVPR 2024 (arXiv 2402.17300); official code Luffy03/VoCo (its "10k" version, with an EMA teacher).

- :class:`VoCoEncoder`: the transferable backbone, built from MONAI's own SwinUNETR parts and named exactly as in
  :class:`monai.networks.nets.SwinUNETR` (``swinViT`` = ``SwinTransformer(use_v2=True)`` and the residual
  ``UnetrBasicBlock`` encoders ``encoder1``, ``encoder2``, ``encoder3``, ``encoder4``, ``encoder10``), so its weights
  load into ``SwinUNETR(use_v2=True)`` unchanged. ``forward`` returns the global feature: the global-average-pooled
  outputs of encoder1 (input), encoder2 (hs0), encoder3 (hs1), encoder4 (hs2) and encoder10 (hs4), concatenated,
  ``24 * fs`` channels (hs3 is not used).
- :class:`VoCoProjectionHead`: ``proj_head.layer{1,2,3}.0``: Linear-BN-ReLU, Linear-BN-ReLU, Linear; the BatchNorm1d
  layers have no affine parameters and no running statistics (always the statistics of the current batch, which holds
  every crop of every volume).
- :class:`VoCoNet`: encoder + projection head (one network).
- :class:`VoCoHead`: ``student`` + ``teacher``, two :class:`VoCoNet`; the teacher is updated only by EMA.
- :func:`load_voco_checkpoint`: loads a VoCo checkpoint (official ``VoCo_10k.pt`` layout or this bundle's pre-training
  output) into a SwinUNETR(v2) and reports matched / missing / unexpected / shape-mismatched keys; it fails when any
  backbone key stays unfilled.

Shapes (fs = ``feature_size``): input ``(B, in_channels, X, Y, Z)`` with every spatial size divisible by 32 (and, in
training mode, at least 64 along one axis: instance norm of ``encoder10`` needs more than one hs4 voxel); global feature
``(B, 24 * fs)``; projection ``(B, out_dim)``. Parameter counts at fs = 48 (MONAI 1.6.1): swinViT 18.637 M, encoder
53.164 M, head (2048/2048) 10.754 M, VoCoHead 127.836 M.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetrBasicBlock
from monai.networks.nets.swin_unetr import SwinTransformer
from monai.utils import ensure_tuple_rep

__all__ = [
    "BACKBONE_PREFIXES",
    "VoCoEncoder",
    "VoCoProjectionHead",
    "VoCoNet",
    "VoCoHead",
    "voco_backbone_state_dict",
    "save_voco_backbone",
    "convert_voco_state_dict",
    "load_voco_checkpoint",
]

logger = logging.getLogger(__name__)

BACKBONE_PREFIXES: tuple[str, ...] = ("swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.")
"""Key prefixes of the transferable backbone (the VoCo encoder inside SwinUNETR)."""


def _is_backbone_key(key: str) -> bool:
    return key.startswith(BACKBONE_PREFIXES)


class VoCoEncoder(nn.Module):
    """SwinUNETR(v2) encoder parts with the VoCo global feature (see the module docstring).

    Args:
        in_channels: input channels (1 for CT).
        feature_size: fs, the Swin embedding size (divisible by 12).
        depths, num_heads, window_size, patch_size: Swin stages (VoCo: 2,2,2,2 / 3,6,12,24 / 7 / 2).
        use_checkpoint: gradient checkpointing in the Swin blocks (saves memory).
        spatial_dims: 3 (2 works too).
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 2,
        use_checkpoint: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if feature_size % 12 != 0:
            raise ValueError(f"feature_size must be divisible by 12, got {feature_size}")
        self.feature_size = feature_size
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=ensure_tuple_rep(window_size, spatial_dims),
            patch_size=ensure_tuple_rep(patch_size, spatial_dims),
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.0,
            norm_layer=nn.LayerNorm,
            use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
            use_v2=True,
        )

        def block(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(spatial_dims, cin, cout, kernel_size=3, stride=1, norm_name="instance",
                                   res_block=True)

        fs = feature_size
        self.encoder1 = block(in_channels, fs)
        self.encoder2 = block(fs, fs)
        self.encoder3 = block(2 * fs, 2 * fs)
        self.encoder4 = block(4 * fs, 4 * fs)
        self.encoder10 = block(16 * fs, 16 * fs)

    @property
    def out_dim(self) -> int:
        """Size of the global feature: ``24 * feature_size``."""
        return 24 * self.feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = self.swinViT(x, True)  # normalised hidden states, as SwinUNETR(normalize=True) uses them
        feats = (self.encoder1(x), self.encoder2(hs[0]), self.encoder3(hs[1]), self.encoder4(hs[2]),
                 self.encoder10(hs[4]))
        return torch.cat([f.flatten(2).mean(-1) for f in feats], dim=1)


class VoCoProjectionHead(nn.Module):
    """VoCo projection head: ``layer1``/``layer2`` are Linear -> BatchNorm1d(affine=False, track_running_stats=False)
    -> ReLU; ``layer3`` is Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048) -> None:
        super().__init__()

        def bn(n: int) -> nn.BatchNorm1d:
            return nn.BatchNorm1d(n, affine=False, track_running_stats=False)

        self.layer1 = nn.Sequential(nn.Linear(in_dim, hidden_dim), bn(hidden_dim), nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), bn(hidden_dim), nn.ReLU(inplace=True))
        self.layer3 = nn.Sequential(nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(x)))


class VoCoNet(VoCoEncoder):
    """One VoCo network: the :class:`VoCoEncoder` modules (SwinUNETR names) plus ``proj_head``.

    ``forward(x)`` maps crops ``(N, C, X, Y, Z)`` to projected features ``(N, out_dim)``; :meth:`features` gives the
    ``24 * fs`` global feature before the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        use_checkpoint: bool = False,
        spatial_dims: int = 3,
        **swin_kwargs,
    ) -> None:
        super().__init__(in_channels, feature_size, use_checkpoint=use_checkpoint, spatial_dims=spatial_dims,
                         **swin_kwargs)
        self.proj_head = VoCoProjectionHead(24 * feature_size, hidden_dim, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_head(super().forward(x))


class VoCoHead(nn.Module):
    """VoCo pre-training network of the official code: a ``student`` and an EMA ``teacher`` :class:`VoCoNet`.

    Args:
        in_channels, feature_size, hidden_dim, out_dim, use_checkpoint: of each :class:`VoCoNet`
            (official: 1, 48, 2048, 2048).
        teacher_init: ``"copy"`` (the teacher starts as a copy of the student, default) or ``"independent"`` (its own
            random initialisation, as in the official code).
        with_teacher: ``False`` builds the single-network form of the CVPR paper (``teacher`` is ``None``).

    ``forward(crops)`` returns the student's projected features ``(N, out_dim)``; the pre-training iteration
    (:class:`custom_components.engines.voco.VoCoTrainer`) runs the teacher itself under ``torch.no_grad``.
    ``state_dict`` keys: ``student.<SwinUNETR name>``, ``student.proj_head.*``, ``teacher.*``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        use_checkpoint: bool = False,
        teacher_init: str = "copy",
        with_teacher: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if teacher_init not in ("copy", "independent"):
            raise ValueError(f"teacher_init must be 'copy' or 'independent', got {teacher_init!r}")
        args = dict(in_channels=in_channels, feature_size=feature_size, hidden_dim=hidden_dim, out_dim=out_dim,
                    use_checkpoint=use_checkpoint, spatial_dims=spatial_dims)
        self.student = VoCoNet(**args)
        self.teacher: VoCoNet | None = None
        if with_teacher:
            self.teacher = copy.deepcopy(self.student) if teacher_init == "copy" else VoCoNet(**args)
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") and isinstance(net.module, nn.Module) else net


def voco_backbone_state_dict(network: nn.Module, source: str = "student") -> dict[str, torch.Tensor]:
    """Backbone weights (SwinUNETR names, ``swinViT.*`` and ``encoder{1,2,3,4,10}.*``) of a VoCoHead / VoCoNet."""
    net = _unwrap(network)
    if isinstance(net, VoCoHead):
        net = getattr(net, source)
        if net is None:
            raise ValueError(f"the VoCoHead has no {source}")
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if _is_backbone_key(k)}


def save_voco_backbone(network: nn.Module, path: str | os.PathLike, source: str = "student") -> str | None:
    """Write the backbone as a plain state dict that loads into ``SwinUNETR(use_v2=True)`` (rank 0 only)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return None
    from ..data.synthetic.io import save_torch_atomically

    state = voco_backbone_state_dict(network, source)
    save_torch_atomically(state, path)  # a crash never leaves a truncated file
    logger.info(f"VoCo backbone ({len(state)} tensors, {source}) saved to {path}")
    return str(path)


def convert_voco_state_dict(state: Mapping, source: str = "student") -> dict[str, torch.Tensor]:
    """Official/own VoCo checkpoint -> SwinUNETR key names (projection head dropped).

    Accepts a flat state dict or ``{"state_dict": ...}`` (also ``{"model": ...}``); strips ``module.``, renames
    ``swin_vit`` to ``swinViT``; for ``student.``/``teacher.`` layouts keeps ``source`` and strips its prefix.
    """
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    out: dict[str, torch.Tensor] = {}
    keys = [k.replace("module.", "") for k in state]
    has_roles = any(k.startswith(("student.", "teacher.")) for k in keys)
    if has_roles and source not in ("student", "teacher"):
        raise ValueError(f"source must be 'student' or 'teacher', got {source!r}")
    for raw, value in state.items():
        key = raw.replace("module.", "").replace("swin_vit", "swinViT")
        if has_roles:
            if not key.startswith(f"{source}."):
                continue
            key = key[len(source) + 1:]
        if key.startswith("proj_head."):
            continue
        out[key] = value
    return out


def load_voco_checkpoint(
    network: nn.Module,
    path: str | os.PathLike | Mapping | None,
    source: str = "student",
    resume_dir: str | os.PathLike | None = None,
) -> dict | None:
    """Load VoCo backbone weights from a local file into a ``SwinUNETR(use_v2=True)`` (or any module with its names).

    Tensors whose shape differs from the network's (e.g. ``patch_embed`` and ``encoder1`` for multi-channel input) are
    dropped and reported; loading uses ``strict=False`` and then **requires every backbone key of the network**
    (``swinViT.*``, ``encoder{1,2,3,4,10}.*``) to have been filled.

    Args:
        network: the target (DDP-wrapped is fine).
        path: checkpoint file (or an already loaded state dict); empty/``None`` does nothing (random init).
        source: ``"student"`` or ``"teacher"`` for checkpoints holding both.
        resume_dir: when it holds an interval checkpoint of an interrupted fine-tuning run, nothing is loaded (the
            resumed run restores its own weights).

    Returns:
        ``{"matched", "missing", "unexpected", "mismatched"}`` sorted key lists (``None`` when nothing was loaded).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: some backbone key was not filled (wrong architecture, ``use_v2=False``, other naming).
    """
    if path is None or (isinstance(path, (str, os.PathLike)) and not str(path)):
        return None
    if resume_dir is not None:
        from custom_components.engines.training import latest_checkpoint

        if latest_checkpoint(resume_dir) is not None:
            logger.info(f"interval checkpoint in {resume_dir}: resuming, not loading {path}")
            return None
    if isinstance(path, Mapping):
        raw, where = path, "<state dict>"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"VoCo checkpoint not found: {path} (run configs/pretrain.json first, or set --pretrained_ckpt '' to "
                "train from random weights)"
            )
        raw, where = torch.load(str(path), map_location="cpu", weights_only=True), str(path)
    state = convert_voco_state_dict(raw, source)
    target = _unwrap(network)
    own = target.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    unexpected = sorted(k for k in state if k not in own)
    target.load_state_dict(loadable, strict=False)
    backbone = [k for k in own if _is_backbone_key(k)]
    unfilled = sorted(k for k in backbone if k not in loadable and k not in mismatched)
    report = {
        "matched": sorted(loadable),
        "missing": sorted(k for k in own if k not in loadable),
        "unexpected": unexpected,
        "mismatched": mismatched,
    }
    logger.info(
        f"VoCo weights from {where} ({source}): {len(report['matched'])} matched, {len(report['missing'])} missing "
        f"(not in the checkpoint: decoder/output), {len(unexpected)} unexpected, {len(mismatched)} shape-mismatched"
        + (f" {mismatched[:4]}" if mismatched else "")
    )
    if unfilled:
        raise RuntimeError(
            f"{where}: {len(unfilled)} of {len(backbone)} backbone keys of the network were not filled (e.g. "
            f"{unfilled[:3]}); unexpected keys in the checkpoint: {unexpected[:5]}. Is it a VoCo/SwinUNETR(use_v2=True)"
            " checkpoint of the same feature_size?"
        )
    return report
