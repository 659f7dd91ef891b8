import torch

from vldm_core.guidance import context_guided


def predictions(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 4, 8, 8, generator=g) for _ in range(3)]


def test_context_scale_one_is_text_guidance_of_the_conditioned_model():
    plain, context_only, full = predictions()
    expected = context_only + 7.5 * (full - context_only)
    assert torch.allclose(context_guided(plain, context_only, full, 7.5, 1.0), expected, atol=1e-5)


def test_no_guidance_at_all_is_the_conditioned_prediction():
    plain, context_only, full = predictions()
    assert torch.allclose(context_guided(plain, context_only, full, 1.0, 1.0), full, atol=1e-6)


def test_context_scale_zero_drops_the_context_and_larger_scales_push_from_it():
    plain, context_only, full = predictions()
    assert torch.allclose(context_guided(plain, context_only, full, 0.0, 0.0), plain)
    weak, strong = (context_guided(plain, context_only, full, 0.0, s) for s in (1.0, 2.0))
    assert torch.allclose(strong - weak, context_only - plain, atol=1e-6)
