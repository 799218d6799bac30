"""Several processes for one gateway (`MAAS_WORKERS` > 1): front-end workers that do the HTTP,
tenancy, metering and decoding work on every core, and one model process that holds the models.

processes.py  the supervisor: binds the port, starts the model process and the workers, restarts them
wire.py       what crosses the Unix socket between a worker and the model process
client.py     a worker's end: calls, cancels, 503 at once when the model process is gone
mirror.py     a worker's registry and inference: models listed, inputs decoded, run over there
server.py     the model process's end: the workers' calls, run on the real registry and batchers
metrics.py    one /metrics for every process
"""
