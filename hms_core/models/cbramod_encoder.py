"""CBraMod (Wang et al., ICLR 2025) built through braindecode, as a foundation encoder.

CBraMod was pretrained on the TUH EEG corpus at 200 Hz with 1 s patches of referential
10-20 channels, in units of 100 uV: exactly our ``referential`` store field (19 channels,
``contract.EEG_CHANNELS``) divided by ``input_scale_uv`` (default 100). The wrapper exposes
the interface of :mod:`hms_core.models.encoder_registry` around
:class:`braindecode.models.CBraMod`: ``encode_patches`` runs braindecode's patch embedding
(with its own mask encoding) and criss-cross transformer, and returns one token of width 200
per (channel, patch). The patch embedding is braindecode's, recomputed with the real DFT as
two fixed matrices instead of ``torch.fft.rfft`` (the same numbers), so a model using the
encoder exports to ONNX. The published weights (``braindecode/cbramod-pretrained``) load
with :meth:`CBraModEncoder.load_init_weights`.
"""
from __future__ import annotations

import logging

import torch
from braindecode.models import CBraMod

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models.encoder_registry import register_encoder
from hms_core.models.patch_window import PatchWindowEncoder
from hms_core.models.published_weights import check_channels, load_matching, read_published

logger = logging.getLogger(__name__)

# CBraMod's convolutional patch encoder fixes the token width and its spectral embedding the
# patch length (101 Fourier bins).
CBRAMOD_DIM = 200
CBRAMOD_PATCH_SAMPLES = 200


@register_encoder("cbramod")
class CBraModEncoder(PatchWindowEncoder):
    """braindecode's CBraMod over the 19 referential channels, as a foundation encoder.

    Parameters
    ----------
    n_chans : int
        Channels (default 19, ``contract.N_EEG_CHANNELS``); only 19 is accepted.
    n_times : int
        Samples per input window (default 10,000 = 50 s at 200 Hz).
    sfreq : float
        Sampling rate in Hz (default 200; only 200 matches the published weights' patches).
    patch_s : float
        Patch length in s; must be 1.0 (200 samples, CBraMod's fixed patch).
    dim : int
        Token width; must be 200 (CBraMod's patch encoder fixes it).
    depth : int
        Criss-cross transformer layers (published: 12).
    heads : int
        Attention heads; must divide 200 (published: 8).
    mlp_ratio : float
        Feed-forward width relative to 200 (published: 4.0, i.e. 800).
    dropout : float
        Dropout (braindecode's ``drop_prob``).
    max_patches : int | None
        Use only the central ``max_patches`` patches (default 10); None: the whole window.
    input_scale_uv : float
        Channels are divided by this many uV (default 100: CBraMod's unit).
    """

    input_field = "referential"
    channel_names = contract.EEG_CHANNELS
    hemisphere_swap = contract.REFERENTIAL_HEMISPHERE_SWAP
    masking_parameters = ("backbone.patch_embedding.mask_encoding",)

    def __init__(self, *, n_chans: int = contract.N_EEG_CHANNELS, n_times: int = contract.WINDOW_SAMPLES,
                 sfreq: float = contract.SAMPLING_RATE_HZ, patch_s: float = 1.0, dim: int = CBRAMOD_DIM,
                 depth: int = 12, heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 max_patches: int | None = 10, input_scale_uv: float = 100.0):
        super().__init__()
        if int(n_chans) != contract.N_EEG_CHANNELS:
            raise ConfigError(f"pretrain.encoder cbramod reads the {contract.N_EEG_CHANNELS} referential channels "
                              f"({', '.join(contract.EEG_CHANNELS)}), got n_chans {n_chans}")
        if int(round(patch_s * sfreq)) != CBRAMOD_PATCH_SAMPLES:
            raise ConfigError(f"pretrain.model.patch_s: cbramod's patches are {CBRAMOD_PATCH_SAMPLES} samples "
                              f"(1 s at 200 Hz), got {patch_s} s at {sfreq} Hz")
        if dim != CBRAMOD_DIM:
            raise ConfigError(f"pretrain.model.dim: cbramod's patch encoder makes tokens of width {CBRAMOD_DIM}, "
                              f"got {dim}; set pretrain.model.dim: {CBRAMOD_DIM}")
        if not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"pretrain.model.depth: expected a positive integer, got {depth!r}")
        if not isinstance(heads, int) or heads < 1 or CBRAMOD_DIM % heads:
            raise ConfigError(f"pretrain.model.heads: {heads!r} does not divide cbramod's width {CBRAMOD_DIM}; "
                              "choose one of 1, 2, 4, 5, 8, 10, 20, 25, 40, 50")
        if max_patches is not None and (not isinstance(max_patches, int) or max_patches < 1):
            raise ConfigError(f"pretrain.model.max_patches: expected a positive integer or null, got {max_patches!r}")
        if not 0 <= dropout < 1 or not input_scale_uv > 0 or not mlp_ratio > 0:
            raise ConfigError("pretrain.model: cbramod needs 0 <= dropout < 1, input_scale_uv > 0 and mlp_ratio > 0, "
                              f"got {dropout!r}, {input_scale_uv!r}, {mlp_ratio!r}")
        self.n_chans, self.n_times, self.sfreq = int(n_chans), int(n_times), float(sfreq)
        self.patch_samples = CBRAMOD_PATCH_SAMPLES
        n_available = self.n_times // self.patch_samples
        if n_available < 1:
            raise ConfigError(f"cbramod: a window of {self.n_times} samples is shorter than one patch")
        self.n_patches = n_available if max_patches is None else min(max_patches, n_available)
        self.dim = self.feature_dim = CBRAMOD_DIM
        self.input_scale_uv = float(input_scale_uv)
        self._kwargs = {"patch_s": float(patch_s), "dim": int(dim), "depth": depth, "heads": heads,
                        "mlp_ratio": float(mlp_ratio), "dropout": float(dropout), "max_patches": max_patches,
                        "input_scale_uv": float(input_scale_uv)}
        n_freqs = self.patch_samples // 2 + 1
        angles = (2 * torch.pi * torch.arange(self.patch_samples, dtype=torch.float64)[:, None]
                  * torch.arange(n_freqs, dtype=torch.float64)[None, :] / self.patch_samples)
        # rfft(norm="forward") divides by the patch length
        self.register_buffer("dft_cos", (torch.cos(angles) / self.patch_samples).float(), persistent=False)
        self.register_buffer("dft_sin", (torch.sin(angles) / self.patch_samples).float(), persistent=False)
        self.backbone = CBraMod(
            n_outputs=contract.N_CLASSES, n_chans=self.n_chans, n_times=self.used_samples, sfreq=self.sfreq,
            patch_size=self.patch_samples, n_layer=depth, nhead=heads,
            dim_feedforward=int(round(CBRAMOD_DIM * mlp_ratio)), drop_prob=dropout, return_encoder_output=True,
        )
        # CBraMod's reconstruction head: kept so published weights load whole, never run, so
        # frozen (DistributedDataParallel fails on parameters that get no gradient).
        self.backbone.proj_out.requires_grad_(False)

    def encode_patches(self, patches: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled ``patches (B, C, P, L)`` -> tokens ``(B, C*P, 200)``; True in ``mask (B, C, P)``
        replaces a patch by CBraMod's mask encoding."""
        batch, n_chans, n_patches, _ = patches.shape
        tokens = self.backbone.encoder(self.embed_patches(patches.float(), mask))  # (B, C, P, 200)
        return tokens.reshape(batch, n_chans * n_patches, self.dim)

    def embed_patches(self, patches: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """braindecode's CBraMod patch embedding of ``patches (B, C, P, L)`` -> ``(B, C, P, 200)``:
        convolutional + spectral embedding (masked patches become the mask encoding) plus the
        convolutional positional encoding."""
        embedding = self.backbone.patch_embedding
        batch, n_chans, n_patches, length = patches.shape
        if mask is not None:
            patches = torch.where(mask[..., None], embedding.mask_encoding.to(patches.dtype), patches)
        conv = embedding.proj_in(patches.reshape(batch, 1, n_chans * n_patches, length))  # (B, d, C*P, L')
        conv = conv.reshape(batch, conv.shape[1], n_chans, n_patches, conv.shape[-1])
        conv = conv.permute(0, 2, 3, 1, 4).reshape(batch, n_chans, n_patches, -1)  # (B, C, P, 200)
        real, imag = patches @ self.dft_cos, patches @ self.dft_sin
        amplitude = torch.sqrt(real * real + imag * imag + 1e-12)  # eps: finite gradient at 0
        tokens = conv + embedding.spectral_proj(amplitude)
        position = embedding.positional_encoding(tokens.permute(0, 3, 1, 2))  # (B, 200, C, P)
        return tokens + position.permute(0, 2, 3, 1)

    def load_init_weights(self, path) -> None:
        """Load published CBraMod weights (``model.safetensors`` + ``config.json``) from ``path``.

        The task head of a published classifier (``final_layer.*``) is skipped.

        Raises
        ------
        DataError
            When the file is missing or unreadable, was built for another channel set, or its
            keys or shapes do not fit this architecture (each named).
        """
        state, config, weights = read_published(path)
        check_channels(config, self.channel_names, weights)
        skipped = load_matching(self.backbone, state, weights, ignore_prefixes=("final_layer.",))
        logger.info("cbramod: loaded %d tensors from %s%s", len(state) - len(skipped), weights,
                    f" (skipped the task head: {skipped})" if skipped else "")
