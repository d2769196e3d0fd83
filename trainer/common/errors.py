"""The one base of the errors a program reports in one line, then exits 1."""


class OneLineError(Exception):
    """A problem the message alone explains: it names the flag, file or step at fault, and
    the program that meets it prints it on one line and exits 1, writing nothing over."""
