"""What the tests share: the parts of the outside world they play (a shopper's
browser, WeChat's notify, a pay page's socket, a STOMP page, a cut network),
server processes, and the one way to wait for something (``eventually``).
Test modules import from here, never from each other."""
