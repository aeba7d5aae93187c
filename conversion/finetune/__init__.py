"""S5: `minigate finetune`, a LoRA miniature trained on a task's exported calls, evaluated and converted for serving."""
