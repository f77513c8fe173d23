"""The speech modality's config sections: `data:`, and `stage1:` / `stage2:` / `sample:` as the
stage's shared fields plus the speech VQ-VAE's, the code prior's and the sampler's own."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.modalities import DataSection
from pipeline.modalities.common import OddKernel, QuantizerSettings
from pipeline.sections import SampleSection, Section, Stage1Section, Stage2Section


class SpeechData(DataSection):
    layout: Literal["auto", "vctk-0.80", "vctk-0.92", "folders"] = "auto"
    mic: Literal["mic1", "mic2"] = "mic1"
    sample_rate: int = Field(16000, ge=1000)
    trim_silence: bool = True
    trim_db: float = Field(40.0, gt=0)  # leading/trailing frames this far below the loudest are silence
    min_samples: int = Field(64, ge=1)  # shorter utterances are skipped: one code of the paper's encoder
    val_speakers: list[str] = Field(default_factory=list)
    # Each shard sample also carries its WORLD vocoder frames (`<key>.world.npy`: envelope,
    # aperiodicity, pitch, voicing per 10 ms), the target of `stage1.decoder: world`; analysed once
    # here (about 0.04 s per second of audio on one core), not at every training step.
    world_frames: bool = False


class SpeechVQVAESettings(QuantizerSettings):
    """The paper's speech VQ-VAE (pipeline.models.speech): `num_downsamples` strided convs
    (6: 64x fewer codes than samples), K=512, a WaveNet decoder conditioned on the codes and a
    learnt speaker embedding."""
    hidden: int = Field(256, ge=1)
    num_downsamples: int = Field(6, ge=1)
    speaker_dim: int = Field(64, ge=1)
    wavenet_channels: int = Field(64, ge=1)
    wavenet_skip: int = Field(128, ge=1)
    wavenet_layers: int = Field(20, ge=1)
    wavenet_cycle: int = Field(10, ge=1)  # dilations 1, 2, ..., 2^(cycle-1), then again
    cond_channels: int = Field(64, ge=1)
    # The decoder models x[t] - a * x[t-1] (0: the paper's plain mu-law samples); generation
    # undoes it, which pushes the sampling noise below the speech at high frequencies.
    preemphasis: float = Field(0.0, ge=0, lt=1)
    # The decoder reads each past sample as its mu-law value through a learnt linear map (true),
    # or as one of 256 learnt embeddings (false). On the demo the value learnt faster early on
    # (6.07 against 6.34 val bits per sample after 200 steps, the same after 800) at the same
    # time per step.
    scalar_input: bool = True
    # > 0: the decoder predicts each sample linearly from the last lpc_order ones, with
    # coefficients the codes and the speaker give, and the WaveNet models what is left (the
    # excitation; LPCNet's split). The prediction, run on what generation draws, shapes the
    # sampling noise by the voice's spectral envelope. 0: the paper's plain mu-law samples.
    lpc_order: int = Field(0, ge=0)


class WorldDecoderSettings(Section):
    """`decoder: world` (pipeline.models.speech_world): an encoder on log-mel frames, one code per
    `code_frames` 10 ms frames, a convolutional decoder to WORLD vocoder frames (`decoder_layers`
    dilated layers of `hidden`), synthesized by pyworld. Its shards need data.world_frames: true."""
    mels: int = Field(80, ge=8)
    code_frames: int = Field(2, ge=1)
    decoder_layers: int = Field(4, ge=1)
    # training only: each utterance's mel axis stretched by a random factor within 1 +- input_warp
    # before the encoder (vocal tract length perturbation), so that codes cannot tell voices by
    # where their formants sit. Measured (4 flite voices, 3,000 steps): conversions 75 % -> 61 %
    # word error at 0.15, reconstructions unchanged.
    input_warp: float = Field(0.15, ge=0, lt=0.5)
    # the speaker is a bias of the decoder's last `speaker_layers` layers (None: every layer) and an
    # offset of its output. Fewer layers: conversions keep more words, and at none (the offset
    # alone) lose the voice. 4 flite voices, 3,000 steps, conversion word error / nearer the target:
    # every layer 61 % / 1.00; the last 2: 55 % / 1.00; the last 1: 46 % / 1.00 (reconstructions
    # 38 %, sources 27-29 %); none: 42 % / 0.38.
    speaker_layers: int | None = Field(1, ge=0)


class SpeechStage1(SpeechVQVAESettings, WorldDecoderSettings, Stage1Section):
    """Stage 1 trains the speech VQ-VAE on random `segment`-sample crops: with teacher forcing
    (the paper's WaveNet decoder) or to the crops' WORLD frames (`decoder: world`)."""
    NOT_SHAPING = Stage1Section.NOT_SHAPING | {"shown_seconds"}
    # wavenet: the paper's autoregressive decoder of mu-law samples (GPU scale: minutes per second
    # of audio on a CPU core, and on 2 cores it has not learnt words); world: WORLD vocoder frames
    # in one pass, the words kept (README, "Speech: which decoder")
    decoder: Literal["wavenet", "world"] = "wavenet"
    batch_size: int = Field(16, ge=1)
    segment: int = Field(16384, ge=64)  # samples per training crop (~1 s at 16 kHz)
    val_segment: int = Field(32768, ge=64)  # validation scores each utterance's first this many samples
    shown_seconds: float = Field(1.0, gt=0)  # length of the reconstructions written at validation


class CodePriorSettings(Section):
    """The prior (pipeline.models.speech.CodePrior): a WaveNet over whole code sequences (padded
    and masked in a batch), conditioned on the speaker; dilations 1, 2, ..., 2^(cycle-1), then again."""
    hidden: int = Field(64, ge=1)
    num_layers: int = Field(10, ge=1)
    kernel_size: OddKernel = Field(3, ge=3)
    cycle: int = Field(5, ge=1)
    speaker_dim: int = Field(32, ge=1)


class SpeechStage2(CodePriorSettings, Stage2Section):
    """`stage2:` of speech: the code prior's fields beside the stage's."""


class SpeechSample(SampleSection):
    seconds: float = Field(2.0, gt=0)  # length of each sampled utterance
    # The WaveNet decoder's sampling temperature, for samples and conversions (sample.temperature
    # is the prior's). Below 1 its draws stray less; with stage1.lpc_order the noise that is left
    # takes the voice's envelope.
    decoder_temperature: float = Field(1.0, gt=0)
    # voice conversion's evaluation (end of stage 1, jobs/convert.py --evaluate): this many val
    # utterances of every speaker, each converted to this many other speakers, cut to this long
    convert_per_speaker: int = Field(1, ge=1)
    convert_targets: int = Field(3, ge=1)
    convert_seconds: float = Field(2.0, gt=0)
