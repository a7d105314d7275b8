"""`sw-zoo serve`: tagging over HTTP. A Starlette app around one Tagger (`app.create_app`), its
request batching (`batcher`), Prometheus metrics (`metrics`) and the web page (`page.html`).

    sw-zoo serve --model runs/demo/bundle              # http://127.0.0.1:8000/
    curl -F file=@post.jpg 'http://127.0.0.1:8000/tag?general_threshold=0.3'
    curl --data-binary @post.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/tag

Needs the `serve` extra (starlette, uvicorn, python-multipart, prometheus-client).
"""
