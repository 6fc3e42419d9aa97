"""One module per resource; each exposes `router`. api/app.py lists which are mounted."""
