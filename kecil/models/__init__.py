"""Model references: built-in names, GGUF files and Hugging Face directories, and what is in them."""
