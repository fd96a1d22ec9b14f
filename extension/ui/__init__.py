"""The LoRA Training tab, shared by the WebUI and `lora-bridge ui` (gradio only; no WebUI imports)."""
