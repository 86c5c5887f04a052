"""LoRA adapters: fine-tuning (:mod:`.finetune`), adapter files as (A, B, scale) factors
(:mod:`.lora_io`), block and module names (:mod:`.naming`), weights streamed from safetensors
(:mod:`.weights`) and forward hooks (:mod:`.hooks`)."""
