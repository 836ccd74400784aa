"""Maps of the representation (gal-map): 2-D coordinates by PCA or UMAP, a scatter picture coloured by a column,
and the tiled image map.

    project   pca (numpy SVD) and umap_map (umap-learn), deterministic for a seed
    table     reading the embeddings, writing the map table (object_id, carried columns, map_x, map_y)
    plot      the scatter: categories with a legend, quantities with a colour bar
    tiles     thumbnails on a grid over the map, one per occupied cell, the galaxy nearest its centre
"""
