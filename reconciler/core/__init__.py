"""The pure core: decode, classify, resolve to a plan, check scope. No I/O, no event loop, no clock."""
