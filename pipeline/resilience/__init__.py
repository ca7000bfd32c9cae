"""Retries, circuit breakers, rate limits, the service chain and the budget guard."""
