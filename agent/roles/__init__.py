"""The three agent roles (node, server, apiserver) and what they share."""
