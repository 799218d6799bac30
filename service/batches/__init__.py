"""Asynchronous batch jobs (`/v1/batches`): a file of inputs, run through a model's batcher in the
`batch` service class, with their results in a JSONL file. See docs/batches.md."""
