"""Model file formats: converting Hugging Face folders to GGUF and writing GGUF files safely."""
