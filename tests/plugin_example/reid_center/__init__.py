"Example reid_nb plugin package: `reid_center.center` (method 'center') and `reid_center.crops` (dataset 'crops')."
