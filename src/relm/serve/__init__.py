"""`relm serve`: the datastore's search and generation over HTTP (FastAPI + uvicorn).

    state = ServerState(ServeConfig("DS", retriever={"kind": "exact"}, lm="smollm2"))
    app = create_app(state, load=True)      # or state.load() first; then uvicorn.run(app)
"""

from .app import create_app
from .config import ServeConfig
from .state import ServerState

__all__ = ["ServeConfig", "ServerState", "create_app"]
