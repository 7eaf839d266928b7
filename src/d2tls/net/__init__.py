"""Asyncio UDP transports."""
