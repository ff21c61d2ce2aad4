"""Fine-tune a LoRA with Hugging Face transformers + peft, then hand it to lorafleet.

The last step is the whole integration: ``announce_job_completed`` uploads the output
directory (to S3/MinIO or a shared directory) and publishes one ``customizer.job.completed``
event on Redis. lorafleet's workers validate and register the adapter; once approved, every
engine of the base model serves it as ``namespace/name@version``.

    python examples/hf_peft_trainer.py \\
        --base-model-dir ./models/tiny-llama --base-model tiny-llama \\
        --data examples/math.jsonl --output-model acme/math-tutor@1.1.0 \\
        --redis-url redis://localhost:6379/0 --upload-to s3://lorafleet-jobs/customizer

``--data`` is JSON lines of ``{"prompt": ..., "completion": ...}``. Any training loop works
(transformers' ``Trainer``, TRL, NeMo); only the final ``save_pretrained`` + announce matter.

``--no-announce`` only trains and saves (HF PEFT layout in ``--output-dir``), for an upload
with ``lorafleet adapters upload`` instead of an event (the README's Quick start).
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from events.publisher import announce_job_completed
from events.streams import DEFAULT_REDIS_URL

# NIM and lorafleet serve LoRA on these seven projections (any subset works).
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: the loss is on the completion (and end-of-sequence) only."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    answer_ids.append(tokenizer.eos_token_id)
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model-dir", type=Path, required=True)
    parser.add_argument("--base-model", help="Registered base model name (to announce).")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output-model", help="namespace/name@version (to announce)")
    parser.add_argument("--output-dir", type=Path, default=Path("out/lora"))
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--upload-to", help="s3://bucket/prefix or file:///shared/dir")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--no-announce",
        action="store_true",
        help="Only train and save the adapter; upload it yourself (lorafleet adapters upload).",
    )
    args = parser.parse_args()
    if not args.no_announce and not (args.base_model and args.output_model):
        parser.error("--base-model and --output-model are required unless --no-announce")

    tokenizer = AutoTokenizer.from_pretrained(args.base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.base_model_dir, torch_dtype=torch.float32)
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        target_modules=PROJECTIONS,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    pairs = [encode(tokenizer, r["prompt"], r["completion"]) for r in rows]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs])

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    for step in range(args.steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f}")

    # HF PEFT format: adapter_config.json + adapter_model.safetensors.
    model.save_pretrained(args.output_dir)
    print(f"saved the adapter to {args.output_dir} (final loss {loss.item():.4f})")
    if args.no_announce:
        return

    namespace = args.output_model.split("/", 1)[0]
    event = announce_job_completed(
        args.redis_url,
        job_id=f"hf-{uuid.uuid4().hex[:12]}",
        namespace=namespace,
        output_model=args.output_model,
        base_model=args.base_model,
        output_dir=args.output_dir,
        upload_to=args.upload_to,
        hyperparameters={"steps": args.steps, "rank": args.rank, "lr": args.lr},
        dataset=str(args.data),
        metrics={"final_loss": round(loss.item(), 5)},
    )
    print(f"announced {args.output_model} as event {event.event_id} ({event.artifact_uri})")


if __name__ == "__main__":
    main()
