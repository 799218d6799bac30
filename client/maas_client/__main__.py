"""`python -m maas_client` is the `maas-client` command."""

from maas_client.cli import main

raise SystemExit(main())
