"""The roof: the `skillq` command and the supervisor of `skillq up`. May import anything;
each command imports what it needs when it runs, so a quick command starts quickly."""
