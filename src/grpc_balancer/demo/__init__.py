"""The greeter demo service: generated code (``make generate``) and its servicer."""
