"""The only layer that imports kubernetes_asyncio."""
