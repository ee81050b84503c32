"""vLLM's offline engine on a small random Llama (transformers' `save_pretrained`,
nothing downloaded): prints, as JSON on its last line, the seconds from the start of
the process to the engine ready, the generation's seconds, and the tokens generated
(greedy, from fixed prompt token ids), so that two runs can be compared.

    python vllm_offline.py MODEL_FOLDER      # the model is saved there if missing
    python vllm_offline.py --save-only MODEL_FOLDER

vLLM's engine spawns processes: the work runs under the `__main__` guard.
"""

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

LAYERS = int(os.environ.get("VLLM_LAYERS", "2"))
HIDDEN = int(os.environ.get("VLLM_HIDDEN", "256"))


def save_model(folder: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 2,
        num_hidden_layers=LAYERS,
        num_attention_heads=HIDDEN // 64,
        num_key_value_heads=HIDDEN // 128,
        max_position_embeddings=512,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def main() -> None:
    if sys.argv[1] == "--save-only":
        save_model(sys.argv[2])
        return
    folder = sys.argv[1]
    if not os.path.exists(os.path.join(folder, "config.json")):
        save_model(folder)
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=folder,
        skip_tokenizer_init=True,
        dtype="bfloat16",
        max_model_len=256,
        max_num_seqs=8,
        seed=0,
    )
    ready = time.perf_counter() - STARTED
    prompts = [{"prompt_token_ids": [1 + (7 * i + j) % 1000 for j in range(16)]} for i in range(4)]
    start = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, detokenize=False))
    generated = time.perf_counter() - start
    tokens = [list(output.outputs[0].token_ids) for output in outputs]
    print(json.dumps({"ready_s": round(ready, 2), "generate_s": round(generated, 2), "tokens": tokens}))


if __name__ == "__main__":
    main()
