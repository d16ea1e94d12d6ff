"""A synthetic HMS data set in the exact Kaggle layout, with a known answer key.

Each session (one spectrogram) is a continuous multichannel EEG of at least 600 s:
a 1/f background with a posterior alpha rhythm, the six class signatures mixed by a
latent class-probability vector that drifts over the session, and additive artifacts
(eye blinks, EKG leak, temporal muscle bursts, electrode pops) with fixed spatial
mixing. One or two EEG files are cut from a session; each has overlapping labelled
sub-windows whose expert votes are multinomial draws from the latent vector of the
window's central 10 s. The Kaggle spectrogram is computed from the same signal along
the contract's chains. The latent vectors are kept in ``answer_key/`` so tests can
compute the best achievable KL. ``expert_consensus`` is the argmax of the votes; a tie
goes to the tied class with the larger latent probability.

Modules, by concern:

- :mod:`~hms_core.data.synthetic.sources`: scalp geometry, class waveforms, shaped noise.
- :mod:`~hms_core.data.synthetic.artifacts`: blinks, EKG, muscle, electrode pops.
- :mod:`~hms_core.data.synthetic.signals`: :func:`synthesize_recording` (one recording).
- :mod:`~hms_core.data.synthetic.plan`: ids, sessions, EEG files, latent anchors, votes.
- :mod:`~hms_core.data.synthetic.writer`: :func:`generate_dataset` and the file writers.
- :mod:`~hms_core.data.synthetic.preset`: the ``full`` preset (the real counts and shape,
  a stratified fraction, metadata only): :func:`generate_preset`.
- :mod:`~hms_core.data.synthetic.answer_key`: latent files and :func:`best_achievable_kl`.
- :mod:`~hms_core.data.synthetic.config`: :class:`SyntheticConfig` (``data.synthetic``).
- :mod:`~hms_core.data.synthetic.cli`: ``hms synth``.
"""
from hms_core.data.synthetic.answer_key import (
    ANSWER_KEY_DIR,
    LATENT_COLUMNS,
    LATENT_FILE,
    TEST_LATENT_FILE,
    best_achievable_kl,
)
from hms_core.data.synthetic.artifacts import ARTIFACT_TYPES
from hms_core.data.synthetic.cli import main
from hms_core.data.synthetic.config import SyntheticConfig
from hms_core.data.synthetic.preset import generate_preset
from hms_core.data.synthetic.signals import SyntheticRecording, synthesize_recording
from hms_core.data.synthetic.writer import generate_dataset

__all__ = [
    "ANSWER_KEY_DIR", "ARTIFACT_TYPES", "LATENT_COLUMNS", "LATENT_FILE", "TEST_LATENT_FILE",
    "SyntheticConfig", "SyntheticRecording", "best_achievable_kl", "generate_dataset", "generate_preset", "main",
    "synthesize_recording",
]
