"""Fine-tuning: dataset files, the job store, the trainer and the job runner."""
