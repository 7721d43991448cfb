"""The CLIP core: backbone loading, text encoders, the prompt-learner core, templates."""
