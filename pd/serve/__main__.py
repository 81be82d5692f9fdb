"""``python -m pd.serve``: run the server (:func:`pd.serve.main`)."""

from pd.serve import main

main()
