"""The `invoice-gateway` command (`main`) and the on-call commands (`oncall/`: `outbox …`,
`circuit …`, a client of the admin API).

The top of the package: it may import everything, `gateway.tools` included, and nothing imports
it. Subcommands are imported when they run, so `invoice-gateway run` loads no tool.
"""
