"""Everything around the gateway that is not the gateway: the platform simulator, the load
generator, the demo, the reliability drills and the benchmark harness, and the child-process
harness they share.

Tools may import any runtime layer (`gateway.app` and below); no runtime module imports
`gateway.tools` (a test checks it). Only `gateway.cli` mounts them as subcommands.
"""
