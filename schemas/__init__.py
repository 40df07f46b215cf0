"""Wire contracts of Dino Wallet: commands, replies, ledger events and dead letters.

Pure data: pydantic v2 models, their orjson encoding and JSON Schema export. No I/O here.
"""
