"""A table row as a question: serialization, model prompt templates, in-context shots."""
