"""The HTTP edge: FastAPI app, schemas, auth and problem details."""
