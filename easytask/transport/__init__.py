"""Links to hosts: one executor over an SSH connection, reached through an agent or plain SSH."""
