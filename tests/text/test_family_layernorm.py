"""starcoder2 (LayerNorms with biases, biased attention, non-gated GELU FFN) and stablelm (LayerNorms, partial
rotary, q/k/v biases) on tiny bases made by llama.cpp's own converter and quantizer: the checks of
``test_families.py`` for these families (forward == transformers, 12-step runs on F16 / Q8_0 / Q4_K_M with
the llama.cpp check, PEFT folder in transformers + peft, llama.cpp's LoRA names, GGUF -> PEFT -> GGUF).
"""

from __future__ import annotations

import pytest
import test_families as families_test
from gguf import MODEL_TENSOR as T

from extension.errors import UserError
from extension.text.families import FAMILIES, hf_name, tensor_names

FAMILIES_HERE = ("starcoder2", "stablelm")
slow = pytest.mark.slow


@pytest.mark.parametrize("kind", [T.ATTN_Q_NORM, T.ATTN_K_NORM], ids=["q_norm", "k_norm"])
def test_stablelm_qk_norms_refused(kind):
    """StableLM 2 12B's per-head Q/K LayerNorms are not built: one line naming the tensor, not a wrong graph."""
    names = tensor_names("stablelm")
    tensor = next(n for n, k in names.items() if k == kind).format(bid=3) + ".weight"
    with pytest.raises(UserError, match=rf"m\.gguf: tensor {tensor} \(StableLM 2 12B's per-head Q/K LayerNorms\)"):
        hf_name(tensor, names, "m.gguf", FAMILIES["stablelm"])


@slow
@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_forward_matches_transformers(family, family_bases):
    families_test.test_forward_matches_transformers(family, family_bases)


@slow
@pytest.mark.parametrize("qtype", families_test.QTYPES)
@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_trains_and_llama_cpp_agrees(family, qtype, family_bases, tmp_path):
    families_test.test_trains_and_llama_cpp_agrees(family, qtype, family_bases, tmp_path)


@slow
@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_peft_folder_in_transformers(family, family_bases, tmp_path):
    families_test.test_peft_folder_in_transformers(family, family_bases, tmp_path)


@slow
@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_adapter_as_llama_cpp_names_it(family, family_bases, tmp_path):
    families_test.test_adapter_as_llama_cpp_names_it(family, family_bases, tmp_path)
