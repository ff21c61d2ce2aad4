"""An independent computation of the evaluation gate's scores with ``transformers`` + ``peft``
(what ``engine.evaluation`` must agree with), from a HF model directory, a PEFT adapter
directory and the eval rows (``{"prompt", "completion"}``).

Same definitions, written again from the docs: the prompt is the tokenizer's encoding with
its special tokens (BOS), the target the completion's tokens plus the first end-of-sequence
id of ``generation_config.json``; loss is the mean token NLL over all targets; exact match
compares greedy ``generate`` output (at most ``len(target) + 4`` new tokens) stripped.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


def hf_scores(
    model_dir: Path, adapter_dir: Path | None, rows: list[dict[str, Any]]
) -> tuple[float, float]:
    """``(loss, exact_match)`` of the base model (``adapter_dir`` None) or the adapter."""
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    model: Any = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    eos = [eos] if isinstance(eos, int) else list(eos)
    nll, tokens, exact = 0.0, 0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"])["input_ids"]
            target = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [eos[0]]
            ids = torch.tensor([prompt + target])
            logits = model(input_ids=ids).logits[0].float()
            pred = logits[len(prompt) - 1 : len(prompt) - 1 + len(target)]
            nll += float(
                torch.nn.functional.cross_entropy(pred, torch.tensor(target), reduction="sum")
            )
            tokens += len(target)
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=len(target) + 4,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            text = tokenizer.decode(out[0, len(prompt) :].tolist(), skip_special_tokens=True)
            exact += int(text.strip() == row["completion"].strip())
    return nll / tokens, exact / len(rows)
