"""EEG foundation encoder: a patch transformer over the 18 bipolar chains.

In the spirit of LaBraM (Jiang et al., 2024) and CBraMod (Wang et al., 2025): each
chain is cut into 1 s patches (200 samples at 200 Hz); a patch becomes one token from a
linear projection of its samples plus one of its log Fourier amplitude, to which a
learned channel embedding (one per chain of ``BIPOLAR_NAMES``) and a learned time
embedding (one per patch position) are added. A pre-norm transformer attends over all
``n_chans * n_patches`` tokens with ``scaled_dot_product_attention`` (flash attention
on GPU). ``forward_features`` mean-pools the tokens into one vector per window.

Input scaling: chains arrive in uV (the frontend clips them to about +-1024 uV); the
encoder divides them by ``input_scale_uv`` (default 100 uV), so typical EEG (10-100 uV)
lands near unit range and clipped artifacts at about +-10.

The encoder is ``pretrain.encoder: hms`` of :mod:`hms_core.models.encoder_registry`. The
pretrained file (``save_foundation``, for any registered encoder) holds the encoder's name,
its ``state_dict`` and the keyword arguments that rebuild it, so ``load_foundation(path)``
works outside the pipeline.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hms_core import atomic, contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.encoder_registry import build_from_spec, register_encoder
from hms_core.models.patch_window import PatchWindowEncoder
from hms_core.models.published_weights import load_matching
from hms_core.models.registry import register_model

logger = logging.getLogger(__name__)

FOUNDATION_FORMAT = "hms_eeg_foundation"
FOUNDATION_VERSION = 1
# How a main model uses the pretrained encoder (``models.<name>.foundation_mode``; null: not at all).
FoundationMode = Literal["frozen", "finetune"]


@dataclass
class FoundationModelConfig:
    """Size and patching of the encoder (config section ``pretrain.model``).

    Parameters
    ----------
    patch_s : float
        Patch length in s (default 1.0, i.e. 200 samples at 200 Hz).
    dim : int
        Token width (default 64; the full run uses 256).
    depth : int
        Number of transformer blocks (default 2).
    heads : int
        Attention heads; must divide ``dim`` (default 4).
    mlp_ratio : float
        Hidden width of each block's MLP relative to ``dim`` (default 2.0).
    dropout : float
        Dropout in attention and MLP (default 0.0).
    max_patches : int | None
        Use only the central ``max_patches`` patches of each window (default 10, the
        expert-labelled central 10 s); None uses the whole window (50 patches).
    input_scale_uv : float
        Chains are divided by this many uV before patching (default 100).
    """

    patch_s: float = 1.0
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    max_patches: int | None = 10
    input_scale_uv: float = 100.0

    def validate(self, path: str = "pretrain.model") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a size that cannot build an encoder."""
        for key in ("dim", "depth", "heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}.{key}: expected a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ConfigError(
                f"{path}.heads: {self.heads} does not divide dim {self.dim}; "
                f"choose heads in {[h for h in range(1, self.dim + 1) if self.dim % h == 0][:8]}..."
            )
        if not self.patch_s > 0:
            raise ConfigError(f"{path}.patch_s: expected > 0 s, got {self.patch_s!r}")
        if self.max_patches is not None and (not isinstance(self.max_patches, int) or self.max_patches < 1):
            raise ConfigError(
                f"{path}.max_patches: expected a positive integer or null, got {self.max_patches!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        if not self.input_scale_uv > 0:
            raise ConfigError(f"{path}.input_scale_uv: expected > 0 uV, got {self.input_scale_uv!r}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"{path}.mlp_ratio: expected > 0, got {self.mlp_ratio!r}")


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).view(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, dim/heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class _Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm_attn(tokens))
        return tokens + self.mlp(self.norm_mlp(tokens))


@register_encoder("hms")
class EEGFoundationEncoder(PatchWindowEncoder):
    """Patch transformer encoder over bipolar EEG chains (``pretrain.encoder: hms``).

    Parameters
    ----------
    n_chans : int
        Number of chains (default 18, ``contract.N_CHAINS``); one channel embedding each.
    n_times : int
        Samples per input window (default 10,000 = 50 s at 200 Hz).
    sfreq : float
        Sampling rate in Hz (default 200).
    patch_s, dim, depth, heads, mlp_ratio, dropout, max_patches, input_scale_uv
        See :class:`FoundationModelConfig` (same defaults).

    Attributes
    ----------
    feature_dim : int
        Width of ``forward_features``' output (= ``dim``).
    patch_samples : int
        Samples per patch (``patch_s * sfreq``).
    n_patches : int
        Patches per chain the encoder uses (the central ones when ``max_patches`` is set).
    """

    input_fields = ("chains",)
    input_field = "chains"
    hemisphere_swap = contract.CHAIN_HEMISPHERE_SWAP
    masking_parameters = ("mask_token",)

    def __init__(
        self,
        *,
        n_chans: int = contract.N_CHAINS,
        n_times: int = contract.WINDOW_SAMPLES,
        sfreq: float = contract.SAMPLING_RATE_HZ,
        patch_s: float = 1.0,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        max_patches: int | None = 10,
        input_scale_uv: float = 100.0,
    ):
        super().__init__()
        self.model_config = FoundationModelConfig(
            patch_s=patch_s, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
            dropout=dropout, max_patches=max_patches, input_scale_uv=input_scale_uv,
        )
        self.model_config.validate()
        self.n_chans = int(n_chans)
        self.n_times = int(n_times)
        self.sfreq = float(sfreq)
        self.patch_samples = int(round(patch_s * sfreq))
        n_available = self.n_times // self.patch_samples
        if n_available < 1:
            raise ConfigError(
                f"pretrain.model.patch_s: a {patch_s} s patch ({self.patch_samples} samples) "
                f"is longer than the window ({self.n_times} samples)"
            )
        self.n_patches = n_available if max_patches is None else min(max_patches, n_available)
        self.input_scale_uv = float(input_scale_uv)
        self.feature_dim = dim
        self.dim = dim

        n_freqs = self.patch_samples // 2 + 1
        # Real DFT as two fixed matrices instead of torch.fft, so the encoder exports to ONNX.
        samples = torch.arange(self.patch_samples, dtype=torch.float64)
        angles = 2 * torch.pi * samples[:, None] * torch.arange(n_freqs, dtype=torch.float64)[None, :] / self.patch_samples
        self.register_buffer("dft_cos", torch.cos(angles).float(), persistent=False)  # (L, F)
        self.register_buffer("dft_sin", torch.sin(angles).float(), persistent=False)
        self.patch_embed = nn.Linear(self.patch_samples, dim)
        self.spectrum_embed = nn.Linear(n_freqs, dim)
        self.channel_embed = nn.Parameter(torch.zeros(self.n_chans, dim))
        self.time_embed = nn.Parameter(torch.zeros(self.n_patches, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.channel_embed, std=0.02)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this encoder (plain Python types only)."""
        return {
            "n_chans": self.n_chans, "n_times": self.n_times, "sfreq": self.sfreq,
            **dataclasses.asdict(self.model_config),
        }

    @property
    def channel_names(self) -> tuple[str, ...]:
        return _channel_names(self.n_chans)

    def load_init_weights(self, path) -> None:
        """Start from the encoder of an earlier :func:`save_foundation` file (same sizes and chains).

        Raises
        ------
        DataError
            When the file is not a foundation checkpoint, reads other chains, or its keys or
            shapes do not fit this encoder (each named).
        """
        payload = _read_payload(path)
        if list(payload.get("channels") or self.channel_names) != list(self.channel_names):
            raise DataError(path, f"pretrain.init_weights: the encoder in this file reads {payload['channels']}, "
                                  f"this one {list(self.channel_names)}")
        load_matching(self, payload["state_dict"], path)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Content embedding of ``patches (B, C, P, L)`` -> ``(B, C, P, dim)`` (no positions).

        The sum of a linear map of the samples and one of the log Fourier amplitude
        ``log1p(|rfft(patch)|)``.
        """
        return self.patch_embed(patches) + self.spectrum_embed(torch.log1p(self.patch_amplitude(patches)))

    def patch_amplitude(self, patches: torch.Tensor) -> torch.Tensor:
        """Fourier amplitude ``|rfft|`` of each patch: ``(..., L) -> (..., L // 2 + 1)``."""
        real = patches.float() @ self.dft_cos
        imag = patches.float() @ self.dft_sin
        return torch.sqrt(real * real + imag * imag + 1e-8)  # eps: finite gradient at 0

    def encode_patches(
        self,
        patches: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode scaled ``patches (B, C, P, L)`` into tokens ``(B, C*P, dim)``.

        Parameters
        ----------
        mask : torch.Tensor | None
            Boolean ``(B, C, P)``; True patches are replaced by the learned mask token
            before the position embeddings are added (masked modelling, forecasting).
        """
        batch, n_chans, n_patches, _ = patches.shape
        content = self.embed_patches(patches)  # (B, C, P, dim)
        if mask is not None:
            content = torch.where(mask[..., None], self.mask_token.to(content.dtype), content)
        tokens = content + self.channel_embed[None, :, None, :] + self.time_embed[None, None, :, :]
        tokens = tokens.reshape(batch, n_chans * n_patches, self.dim)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class FoundationClassifier(nn.Module):
    """The foundation encoder with a linear head: ``chains (B, C, T) -> logits (B, n_outputs)``.

    Parameters
    ----------
    n_outputs : int
        Classes (default 6, ``contract.N_CLASSES``).
    n_chans, n_times, sfreq, patch_s, dim, depth, heads, mlp_ratio, dropout, max_patches, input_scale_uv
        Passed to :class:`EEGFoundationEncoder` when ``encoder`` is None.
    encoder : nn.Module | None
        An existing (e.g. pretrained) encoder of :mod:`hms_core.models.encoder_registry` to
        wrap; the classifier reads its ``input_field``.
    freeze_encoder : bool
        Linear probe: the encoder's weights get no gradient and it stays in eval mode
        (default False, i.e. fine-tuning).
    head_dropout : float
        Dropout before the linear head (default 0.0).
    """

    input_fields = ("chains",)

    def __init__(
        self,
        *,
        n_outputs: int = contract.N_CLASSES,
        n_chans: int = contract.N_CHAINS,
        n_times: int = contract.WINDOW_SAMPLES,
        sfreq: float = contract.SAMPLING_RATE_HZ,
        encoder: nn.Module | None = None,
        freeze_encoder: bool = False,
        head_dropout: float = 0.0,
        **encoder_kwargs: Any,
    ):
        super().__init__()
        if encoder is None:
            encoder = EEGFoundationEncoder(n_chans=n_chans, n_times=n_times, sfreq=sfreq, **encoder_kwargs)
        elif encoder_kwargs:
            raise ValueError(f"FoundationClassifier: pass either encoder or encoder kwargs, not both {sorted(encoder_kwargs)}")
        self.encoder = encoder
        self.input_fields = (encoder.input_field,)
        self.freeze_encoder = bool(freeze_encoder)
        self.n_outputs = int(n_outputs)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.feature_dim, self.n_outputs)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "FoundationClassifier":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward_features(self, chains: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder.forward_features(chains)
        return self.encoder.forward_features(chains)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(features))

    def forward(self, chains: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(chains))


def save_foundation(
    encoder: EEGFoundationEncoder, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> None:
    """Write ``encoder`` atomically: its ``state_dict`` and the kwargs that rebuild it.

    Parameters
    ----------
    encoder : EEGFoundationEncoder
        The encoder to save (moved to CPU in the file).
    path : path-like
        Output ``.pth``; readable with ``torch.load(path, weights_only=True)``.
    extra : Mapping | None
        Plain-typed extras stored under their keys (e.g. ``"objectives"``, ``"metrics"``).
    """
    payload = {
        "format": FOUNDATION_FORMAT,
        "version": FOUNDATION_VERSION,
        "encoder": encoder.encoder_name,
        "model_kwargs": encoder.init_kwargs(),
        "channels": list(encoder.channel_names),
        "state_dict": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
        **dict(extra or {}),
    }
    atomic.torch_save(payload, path)


def _channel_names(n_chans: int) -> tuple[str, ...]:
    return contract.BIPOLAR_NAMES if n_chans == contract.N_CHAINS else tuple(f"ch{i}" for i in range(n_chans))


def load_foundation(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the encoder that :func:`save_foundation` wrote to ``path`` (eval mode).

    The file names its encoder (``pretrain.encoder``; files without one are ``"hms"``).

    Raises
    ------
    DataError
        When the file is missing, unreadable, or not a foundation checkpoint.
    """
    payload = _read_payload(path)
    try:
        encoder = build_from_spec({"encoder": payload.get("encoder", "hms"), **payload["model_kwargs"]})
        encoder.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise DataError(path, f"foundation checkpoint does not match the encoder: {exc}") from exc
    return encoder.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()


def _read_payload(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checked contents of a :func:`save_foundation` file."""
    if not os.path.exists(path):
        raise DataError(path, "foundation checkpoint not found (run the pretrain step first)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(path, f"cannot read foundation checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FOUNDATION_FORMAT:
        raise DataError(path, f"not an EEG foundation checkpoint (expected format {FOUNDATION_FORMAT!r})")
    if payload.get("version") != FOUNDATION_VERSION:
        raise DataError(path, f"foundation checkpoint version {payload.get('version')!r}, expected {FOUNDATION_VERSION}")
    return payload


@register_model
def foundation_linear(
    *,
    n_outputs: int = contract.N_CLASSES,
    n_chans: int = contract.N_CHAINS,
    n_times: int = contract.WINDOW_SAMPLES,
    sfreq: float = contract.SAMPLING_RATE_HZ,
    foundation_path: str | os.PathLike | None = None,
    foundation_mode: str | None = None,
    head_dropout: float = 0.0,
    **encoder_kwargs: Any,
) -> FoundationClassifier:
    """Registry factory: the foundation encoder with a linear head (``chains -> logits``).

    Parameters
    ----------
    n_outputs, n_chans, n_times, sfreq
        Braindecode signal arguments (defaults 6 classes, 18 chains, 10,000 samples, 200 Hz).
    foundation_path : path | None
        Pretrained encoder file (``load_foundation``); its saved kwargs win over
        ``encoder_kwargs``.
    foundation_mode : {"finetune", "frozen", None}
        ``"finetune"``: start from ``foundation_path`` and train everything; ``"frozen"``:
        train only the head (linear probe); None (default): ignore ``foundation_path``
        and train a randomly initialised encoder (as ``resnet1d_gru`` does).
    head_dropout : float
        Dropout before the head (default 0.0).
    **encoder_kwargs
        Encoder sizes when no ``foundation_path`` is given (see :class:`FoundationModelConfig`).
    """
    if foundation_mode not in ("finetune", "frozen", None):
        raise ConfigError(f"models.foundation_linear.foundation_mode: {foundation_mode!r} is not one of "
                          "'finetune', 'frozen', null")
    encoder = None
    if foundation_mode is not None and foundation_path is None:
        raise ConfigError("models.foundation_linear.foundation_mode is set but no foundation_path "
                          "was given (run the pretrain step, or set foundation_mode to null)")
    if foundation_mode is not None:
        encoder = load_foundation(foundation_path)  # it reads its own store field and channels
        encoder_kwargs = {}
    return FoundationClassifier(
        n_outputs=n_outputs, n_chans=n_chans, n_times=n_times, sfreq=sfreq, encoder=encoder,
        freeze_encoder=foundation_mode == "frozen", head_dropout=head_dropout, **encoder_kwargs,
    )


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

