"""Transferability scores for ranking pre-trained models without fine-tuning."""
