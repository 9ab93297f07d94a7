"""Two peers in one process (in production: one per process/pod), one shared load."""

import asyncio

import tokencache


async def main() -> None:
    loads = 0

    async def load(key: str) -> tokencache.Entry:  # runs on the key's owner only
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.1)  # a slow backend
        return tokencache.Entry(value=f"thumbnail of {key}".encode(), ttl=300)

    urls = ["http://127.0.0.1:5101", "http://127.0.0.1:5102"]
    peers = []
    for url in urls:
        ws = tokencache.Workspace(self_url=url, peer_secret="shared-peer-secret")
        ws.set_peers(urls)
        ws.new_group("thumbnails", max_bytes=64 << 20, loader=load)
        await ws.serve("127.0.0.1", int(url.rsplit(":", 1)[1]))
        peers.append(ws)

    groups = [ws.get_group("thumbnails") for ws in peers]
    values = await asyncio.gather(*(g.get("cat.jpg") for g in groups for _ in range(50)))
    assert len(set(values)) == 1
    print(values[0], "- loads in the cluster:", loads)  # thumbnail of cat.jpg - loads: 1

    await groups[0].remove("cat.jpg")  # the owner's copy, then every peer's hot copy
    for ws in peers:
        await ws.close()


asyncio.run(main())
