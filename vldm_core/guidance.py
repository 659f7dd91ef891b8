"""Context guidance (paper, Sec. 3.1.1) combined with text guidance.

The prediction model is trained with S = 0 context frames too, so it knows the
prediction without context, f(z), next to f(z; c_S). Guidance pushes away from
the former: f(z) + s * (f(z; c_S) - f(z)). With a prompt as well, the two
guidance directions stack (as in InstructPix2Pix):

    f(z; -, -) + s * (f(z; c_S, -) - f(z; -, -)) + w * (f(z; c_S, text) - f(z; c_S, -))

At s = 1 this is text guidance of the context-conditioned model, exactly; the
unconditioned branch f(z; -, -) is the model with c_S = (0, 0).
"""


def context_guided(plain, context_only, full, text_scale, context_scale):
    """Predictions f(z; -, -), f(z; c_S, -) and f(z; c_S, text) -> the guided prediction."""
    return plain + context_scale * (context_only - plain) + text_scale * (full - context_only)
