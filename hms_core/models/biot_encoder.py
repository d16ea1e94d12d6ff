"""BIOT (Yang et al., NeurIPS 2023) built through braindecode, as a foundation encoder.

BIOT tokenises each channel on its own: a short-time Fourier transform (1 s frames, a
rectangular window, a hop of half a frame at 200 Hz) whose amplitude spectrum (101 bins)
a linear layer embeds; a learned channel token and a sinusoidal position (frame index
within the channel) are added, and a linear-attention transformer attends over the frames
of all channels. Its published checkpoints (``braindecode/biot-pretrained-*``) read the
bipolar TCP montage, which is our ``chains`` store field: the first 16 chains are BIOT's 16
TCP derivations in BIOT's order (T3/T4/T5/T6 are T7/T8/P7/P8).

The wrapper exposes the interface of :mod:`hms_core.models.encoder_registry`. Our patches
are the non-overlapping 1 s frames; the half-hop frames between them straddle two patches.
``encode_patches`` runs all ``2P - 1`` frames per channel through BIOT (as BIOT does) and
returns the tokens of the ``P`` patch-aligned frames. A masked patch hides every frame that
sees one of its samples (its own and both straddling ones), whose embedding is replaced by
a learned mask embedding, so masked and forecast patches leak nothing through the overlap.
``forward_features`` is BIOT's own pooling: the mean over all frames. The amplitude spectrum
is computed with the real DFT as two fixed matrices instead of ``torch.stft`` (the same
numbers), so a model using the encoder exports to ONNX.
"""
from __future__ import annotations

import logging

import torch
from braindecode.models import BIOT
from torch import nn

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models.encoder_registry import register_encoder
from hms_core.models.patch_window import PatchWindowEncoder
from hms_core.models.published_weights import check_channels, load_matching, read_published

logger = logging.getLogger(__name__)

# braindecode sets BIOT's STFT length to sfreq samples; the published weights embed its
# 101 bins at 200 Hz with a hop of 100 samples.
BIOT_SFREQ_HZ = 200.0
BIOT_FRAME_SAMPLES = 200
BIOT_HOP_SAMPLES = BIOT_FRAME_SAMPLES // 2
# linear_attention_transformer's feed-forward is 4x the width, not configurable.
BIOT_MLP_RATIO = 4.0
# braindecode's positional-encoding table has 1000 rows (frames per channel).
BIOT_MAX_FRAMES = 1000
# BIOT's 16-channel checkpoints read the TCP bipolar montage: our first 16 chains.
BIOT_TCP_CHANNELS = 16


@register_encoder("biot")
class BIOTEncoder(PatchWindowEncoder):
    """braindecode's BIOT over the 18 bipolar chains, as a foundation encoder.

    Parameters
    ----------
    n_chans : int
        Chains (default 18, ``contract.N_CHAINS``); only 18 is accepted.
    n_times : int
        Samples per input window (default 10,000 = 50 s at 200 Hz).
    sfreq : float
        Sampling rate in Hz; only 200 (BIOT's STFT length is ``sfreq`` samples, and the
        published weights embed 101 frequency bins).
    patch_s : float
        Patch length in s; must be 1.0 (one STFT frame, 200 samples).
    dim : int
        Token width (published: 256); even (sinusoidal positions).
    depth : int
        Linear-attention transformer layers (published: 4).
    heads : int
        Attention heads; must divide ``dim`` (published: 8).
    mlp_ratio : float
        Must be 4.0 (the transformer's fixed feed-forward width).
    dropout : float
        Dropout of the positions, the attention and after it (braindecode's ``drop_prob``,
        ``att_drop_prob`` and ``att_layer_drop_prob``).
    max_patches : int | None
        Use only the central ``max_patches`` patches (default 10, BIOT's 10 s windows);
        None: the whole window.
    input_scale_uv : float
        Chains are divided by this many uV (default 100). (BIOT's authors divided each
        channel by its 95th percentile of absolute values; a fixed scale keeps amplitude
        information and matches our other encoders.)
    """

    input_field = "chains"
    channel_names = contract.BIPOLAR_NAMES
    hemisphere_swap = contract.CHAIN_HEMISPHERE_SWAP
    masking_parameters = ("mask_embedding",)

    def __init__(self, *, n_chans: int = contract.N_CHAINS, n_times: int = contract.WINDOW_SAMPLES,
                 sfreq: float = contract.SAMPLING_RATE_HZ, patch_s: float = 1.0, dim: int = 256,
                 depth: int = 4, heads: int = 8, mlp_ratio: float = BIOT_MLP_RATIO, dropout: float = 0.0,
                 max_patches: int | None = 10, input_scale_uv: float = 100.0):
        super().__init__()
        _check_sizes(n_chans=n_chans, sfreq=sfreq, patch_s=patch_s, dim=dim, depth=depth, heads=heads,
                     mlp_ratio=mlp_ratio, dropout=dropout, max_patches=max_patches, input_scale_uv=input_scale_uv)
        self.n_chans, self.n_times, self.sfreq = int(n_chans), int(n_times), float(sfreq)
        self.patch_samples = BIOT_FRAME_SAMPLES
        n_available = self.n_times // self.patch_samples
        if n_available < 1:
            raise ConfigError(f"biot: a window of {self.n_times} samples is shorter than one patch")
        self.n_patches = n_available if max_patches is None else min(max_patches, n_available)
        if self.n_frames > BIOT_MAX_FRAMES:
            raise ConfigError(f"pretrain.model.max_patches: biot encodes at most {BIOT_MAX_FRAMES} frames per "
                              f"channel ({(BIOT_MAX_FRAMES + 1) // 2} patches), got {self.n_patches} patches")
        self.dim = self.feature_dim = int(dim)
        self.input_scale_uv = float(input_scale_uv)
        self._kwargs = {"patch_s": float(patch_s), "dim": int(dim), "depth": depth, "heads": heads,
                        "mlp_ratio": float(mlp_ratio), "dropout": float(dropout), "max_patches": max_patches,
                        "input_scale_uv": float(input_scale_uv)}
        n_freqs = self.patch_samples // 2 + 1
        angles = (2 * torch.pi * torch.arange(self.patch_samples, dtype=torch.float64)[:, None]
                  * torch.arange(n_freqs, dtype=torch.float64)[None, :] / self.patch_samples)
        # torch.stft(normalized=False) with its default rectangular window: the plain DFT
        self.register_buffer("dft_cos", torch.cos(angles).float(), persistent=False)
        self.register_buffer("dft_sin", torch.sin(angles).float(), persistent=False)
        self.backbone = BIOT(
            embed_dim=self.dim, num_heads=heads, num_layers=depth, sfreq=self.sfreq, hop_length=BIOT_HOP_SAMPLES,
            n_outputs=contract.N_CLASSES, n_chans=self.n_chans, n_times=self.used_samples, drop_prob=dropout,
            att_drop_prob=dropout, att_layer_drop_prob=dropout,
        )
        # BIOT's classification head: kept so published weights load whole, never run, so
        # frozen (DistributedDataParallel fails on parameters that get no gradient).
        self.backbone.final_layer.requires_grad_(False)
        # Our addition (BIOT has no masking): the embedding of a hidden frame.
        self.mask_embedding = nn.Parameter(torch.zeros(self.dim))
        nn.init.normal_(self.mask_embedding, std=0.02)

    @property
    def n_frames(self) -> int:
        """STFT frames per channel: the patches and the half-hop frames between them."""
        return 2 * self.n_patches - 1

    def encode_patches(self, patches: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled ``patches (B, C, P, L)`` -> tokens ``(B, C*P, dim)`` of the patch-aligned frames;
        True in ``mask (B, C, P)`` hides every frame that sees that patch."""
        batch, n_chans, n_patches, _ = patches.shape
        tokens = self.encode_frames(patches, mask)[:, :, ::2]  # frame 2j is patch j
        return tokens.reshape(batch, n_chans * n_patches, self.dim)

    def encode_frames(self, patches: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """BIOT over all ``2P - 1`` frames per channel: ``(B, C, P, L)`` -> ``(B, C, 2P - 1, dim)``."""
        batch, n_chans, n_patches, length = patches.shape
        encoder = self.backbone.encoder
        frames = _frames(patches.float())  # (B, C, F, L)
        real, imag = frames @ self.dft_cos, frames @ self.dft_sin
        amplitude = torch.sqrt(real * real + imag * imag + 1e-12)  # eps: finite gradient at 0
        tokens = encoder.patch_embedding.projection(amplitude)  # (B, C, F, dim)
        if mask is not None:
            tokens = torch.where(_frame_mask(mask)[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        tokens = tokens + encoder.channel_tokens.weight[:n_chans, None, :]
        n_frames = tokens.shape[2]
        tokens = encoder.positional_encoding.dropout(tokens + encoder.positional_encoding.pe[0, :n_frames])
        out = encoder.transformer(tokens.reshape(batch, n_chans * n_frames, self.dim))
        return out.reshape(batch, n_chans, n_frames, self.dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 18, T)`` chains in uV -> ``(B, dim)``: BIOT's mean over all frames."""
        return self.encode_frames(self.patchify(x)).mean(dim=(1, 2))

    def load_init_weights(self, path) -> None:
        """Load published BIOT weights (``model.safetensors`` + ``config.json``) from ``path``.

        The task head of a published classifier (``final_layer.*``) is skipped when its
        width differs; the mask embedding (ours) keeps its random start. A 16-channel
        checkpoint (``biot-pretrained-prest-16chs``: the TCP montage, our first 16 chains)
        fills the first 16 channel tokens; those of Fz-Cz and Cz-Pz keep their random start.
        The 18-channel checkpoints' tokens 17 and 18 were learned for C3-A2 and C4-A1 (SHHS);
        here they embed Fz-Cz and Cz-Pz, which a ``chs_info`` in ``config.json`` reports as a
        channel mismatch.

        Raises
        ------
        DataError
            When the file is missing or unreadable, was built for another channel set, or its
            keys or shapes do not fit this architecture (each named).
        """
        state, config, weights = read_published(path)
        own = self.backbone.state_dict()
        tokens_key = "encoder.channel_tokens.weight"
        file_tokens = state.get(tokens_key)
        if (file_tokens is not None and file_tokens.ndim == 2 and file_tokens.shape[0] == BIOT_TCP_CHANNELS
                and file_tokens.shape[1] == own[tokens_key].shape[1]):
            check_channels(config, self.channel_names[:BIOT_TCP_CHANNELS], weights)
            state = {**state, tokens_key: torch.cat([file_tokens, own[tokens_key][BIOT_TCP_CHANNELS:]])}
            logger.info("biot: %s is a %d-channel checkpoint; the channel tokens of %s keep their random start",
                        weights, BIOT_TCP_CHANNELS, ", ".join(self.channel_names[BIOT_TCP_CHANNELS:]))
        else:
            check_channels(config, self.channel_names, weights)
        head = {k: v for k, v in own.items() if k.startswith("final_layer.")}
        state = {k: v for k, v in state.items() if k not in head or v.shape == head[k].shape}
        state.update({k: v for k, v in head.items() if k not in state})  # another task head: keep ours
        load_matching(self.backbone, state, weights)
        logger.info("biot: loaded %s", weights)


def _frames(patches: torch.Tensor) -> torch.Tensor:
    """``(B, C, P, L)`` -> the ``2P - 1`` frames of hop ``L / 2``: patch j at 2j, and at 2j + 1
    the second half of patch j joined to the first half of patch j + 1."""
    batch, n_chans, n_patches, length = patches.shape
    half = length // 2
    straddle = torch.cat([patches[:, :, :-1, half:], patches[:, :, 1:, :half]], dim=-1)  # (B, C, P-1, L)
    pairs = torch.stack([patches[:, :, :-1], straddle], dim=3).reshape(batch, n_chans, 2 * (n_patches - 1), length)
    return torch.cat([pairs, patches[:, :, -1:]], dim=2)


def _frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """Patch mask ``(B, C, P)`` -> frame mask ``(B, C, 2P - 1)``: a frame is hidden when it
    sees a hidden patch."""
    batch, n_chans, n_patches = mask.shape
    straddle = mask[:, :, :-1] | mask[:, :, 1:]
    pairs = torch.stack([mask[:, :, :-1], straddle], dim=3).reshape(batch, n_chans, 2 * (n_patches - 1))
    return torch.cat([pairs, mask[:, :, -1:]], dim=2)


def _check_sizes(*, n_chans, sfreq, patch_s, dim, depth, heads, mlp_ratio, dropout, max_patches,
                 input_scale_uv) -> None:
    """ConfigError naming the ``pretrain.model`` key of a size BIOT cannot take."""
    if int(n_chans) != contract.N_CHAINS:
        raise ConfigError(f"pretrain.encoder biot reads the {contract.N_CHAINS} bipolar chains "
                          f"({', '.join(contract.BIPOLAR_NAMES)}), got n_chans {n_chans}")
    if float(sfreq) != BIOT_SFREQ_HZ:
        raise ConfigError(f"biot: its STFT is one frame of sfreq samples and the published weights embed "
                          f"{BIOT_FRAME_SAMPLES // 2 + 1} bins, so it needs {BIOT_SFREQ_HZ:g} Hz, got {sfreq} Hz")
    if int(round(patch_s * sfreq)) != BIOT_FRAME_SAMPLES:
        raise ConfigError(f"pretrain.model.patch_s: biot's patches are its {BIOT_FRAME_SAMPLES}-sample STFT frames "
                          f"(1 s at 200 Hz, hop {BIOT_HOP_SAMPLES}), got {patch_s} s")
    if not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ConfigError(f"pretrain.model.dim: biot needs an even positive width (published 256), got {dim!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"pretrain.model.depth: expected a positive integer, got {depth!r}")
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise ConfigError(f"pretrain.model.heads: {heads!r} does not divide biot's width {dim}")
    if mlp_ratio != BIOT_MLP_RATIO:
        raise ConfigError(f"pretrain.model.mlp_ratio: biot's feed-forward is fixed at {BIOT_MLP_RATIO:g}x the "
                          f"width, got {mlp_ratio!r}; set pretrain.model.mlp_ratio: {BIOT_MLP_RATIO:g}")
    if max_patches is not None and (not isinstance(max_patches, int) or max_patches < 1):
        raise ConfigError(f"pretrain.model.max_patches: expected a positive integer or null, got {max_patches!r}")
    if not 0 <= dropout < 1 or not input_scale_uv > 0:
        raise ConfigError("pretrain.model: biot needs 0 <= dropout < 1 and input_scale_uv > 0, "
                          f"got {dropout!r}, {input_scale_uv!r}")
