"""What the gateway does when the platform fails: one classified result per attempt
(`failures`: the failure classes and the one table of what each means), the retry policy and
budget, the circuit breaker, the health probe, the rate limiter, the backup endpoint for reads
(`failover`), and the pipeline that runs one operation's attempts under all of them.

It may import `gateway.upstream` and the shared root modules; nothing above it. Time and sleep
come in as a `Clock`, so back-off and breaker timing are tested without sleeping.
"""
