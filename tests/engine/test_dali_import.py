"""DALI imported without its operators' signatures and docstrings still decodes, and gets its
generators back afterwards; a decoder without DALI says what to install."""
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from dcx.core.errors import DcxError
from dcx.core.preprocess import Preprocess
from dcx.engine.dali_import import stub_generators
from dcx.engine.decode import Decoder, module_available

needs_dali = pytest.mark.skipif(not module_available("nvidia.dali"), reason="DALI is not installed")

FRESH_IMPORT = textwrap.dedent("""
    import io, sys
    import numpy as np
    from PIL import Image
    from dcx.engine.dali_import import import_dali

    dali = import_dali()
    from nvidia.dali import backend, fn, pipeline_def, types
    from nvidia.dali.ops import _docs, _signatures

    # the stubs took effect while DALI imported ...
    assert fn.decoders.image.__signature__ is None, fn.decoders.image.__signature__
    assert fn.decoders.image.__doc__ == ""
    # ... and the real generators are back, and no finder is left behind
    schema = backend.GetSchema("decoders__Image")
    signature = _signatures._call_signature(schema, "fn", include_inputs=True, include_kwargs=True)
    assert "output_type" in signature.parameters, signature
    assert "output_type" in _docs._docstring_generator_fn("decoders__Image")
    assert not any(type(f).__name__ == "_StubbingFinder" for f in sys.meta_path)

    # a pipeline decodes a PNG to the very pixels Pillow reads
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        encoded = fn.external_source(name="encoded", batch=True)
        return fn.decoders.image(encoded, output_type=types.GRAY, device="cpu")

    pipe = decode()
    pipe.build()
    pipe.feed_input("encoded", [np.frombuffer(png.getvalue(), np.uint8)])
    (out,) = pipe.run()
    assert np.array_equal(np.array(out.as_tensor())[0, :, :, 0], pixels)
    print("ok")
""")


@needs_dali
def test_a_fresh_import_is_stubbed_then_restored_and_decodes():
    done = subprocess.run([sys.executable, "-c", FRESH_IMPORT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_only_the_generators_a_module_has_are_stubbed():
    def real(*args, **kwargs):
        return "generated"

    module = SimpleNamespace(signature=real, not_callable=1)
    originals = stub_generators(module, {"signature": None, "not_callable": "", "absent": ""})
    assert originals == {"signature": real}
    assert module.signature("any", api="fn") is None
    assert module.not_callable == 1 and not hasattr(module, "absent")


def test_a_decoder_without_dali_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed: importing it raises
    with pytest.raises(DcxError, match="DALI is not installed: pip install nvidia-dali-cuda130"):
        Decoder(Preprocess(64))
