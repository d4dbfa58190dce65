"""Small helpers below both halves of convkit: argument checks, type aliases and the
model protocol, and dry runs that leave a model's state untouched. They import nothing
else from convkit."""
