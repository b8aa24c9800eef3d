"""The check both video guidances' ``compile_unet`` tests share: the compiled UNet path predicts the eager noise."""

from typing import Optional

import torch


def passthrough_compile(monkeypatch) -> list:
    """``torch.compile`` as ``fourdfy.guidance.video_sds`` sees it, replaced by a recorder that returns the function
    itself (Inductor takes minutes on a CPU even for the tiny UNets); the list gets each compiled function and its
    keyword arguments."""
    from fourdfy.guidance import video_sds

    compiled: list = []
    monkeypatch.setattr(video_sds.torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    return compiled


def assert_compiled_unet_predicts_eager(compiled, eager, z_t, t, cond, uncond, recorded: Optional[list]) -> None:
    """``compiled.predict_noise`` (through its compiled UNet call, in the CUDA graph on CUDA: the capture, then a
    replay) equals ``eager``'s, the compiled function was built for the compiled guidance only, and the state dicts
    have the same keys; ``recorded`` (from :func:`passthrough_compile`, or None) lists exactly the UNet call."""
    with torch.no_grad():
        expected = eager.predict_noise(z_t, t, cond, uncond)
        for _ in range(2):
            got = compiled.predict_noise(z_t, t, cond, uncond)
            for a, b in zip(got, expected):
                assert float(b.abs().max()) > 0
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert compiled._unet_forward._compiled is not None and eager._unet_forward._compiled is None
    if recorded is not None:
        assert recorded == [(compiled._unet_call, {"dynamic": False})]
    assert compiled.state_dict().keys() == eager.state_dict().keys()
